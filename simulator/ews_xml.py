"""XML plumbing of the simulated EWS endpoint: namespaces, SOAP envelopes, faults and request parsing.

Responses are built with lxml element trees; element order inside complex types follows Microsoft's
``types.xsd`` because Exchange clients (and schema validation) depend on it.
"""

import re
from datetime import datetime, timezone

from lxml import etree

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
M_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
T_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
E_NS = "http://schemas.microsoft.com/exchange/services/2006/errors"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

NSMAP = {"s": SOAP_NS, "m": M_NS, "t": T_NS}

# What an Exchange 2016 CU23 server reports; "V2017_07_11" is the schema version string newer CUs send.
EXCHANGE_2016_VERSION = {
    "MajorVersion": "15",
    "MinorVersion": "1",
    "MajorBuildNumber": "2507",
    "MinorBuildNumber": "6",
    "Version": "V2017_07_11",
}
# Exchange 2010 SP2 answers with its own schema name as Version.
EXCHANGE_2010_SP2_VERSION = {
    "MajorVersion": "14",
    "MinorVersion": "2",
    "MajorBuildNumber": "247",
    "MinorBuildNumber": "5",
    "Version": "Exchange2010_SP2",
}

# RequestServerVersion values in schema order (types.xsd ExchangeVersionType), oldest first.
REQUEST_VERSIONS = (
    "Exchange2007",
    "Exchange2007_SP1",
    "Exchange2010",
    "Exchange2010_SP1",
    "Exchange2010_SP2",
    "Exchange2013",
    "Exchange2013_SP1",
    "Exchange2015",
    "Exchange2016",
)

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, remove_blank_text=True, huge_tree=False, load_dtd=False
)


def m(tag):
    """Qualified name in the EWS messages namespace."""
    return f"{{{M_NS}}}{tag}"


def t(tag):
    """Qualified name in the EWS types namespace."""
    return f"{{{T_NS}}}{tag}"


def sub(parent, qname, text=None, **attrs):
    """Append a child element (text converted with ``xml_value``) and return it."""
    elem = etree.SubElement(parent, qname, {k: xml_value(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        elem.text = xml_value(text)
    return elem


def element(qname, text=None, **attrs):
    """A detached element, for builders that assemble children before ordering them."""
    elem = etree.Element(qname, {k: xml_value(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        elem.text = xml_value(text)
    return elem


def xml_value(value):
    """Render a Python value the way xs:boolean / xs:dateTime / xs:int expect it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_datetime(value)
    return str(value)


def xml_bool(text, default=False):
    """xs:boolean from a client: "true"/"1" or "false"/"0" (exchangelib sends the digits)."""
    if text is None or not text.strip():
        return default
    return text.strip().lower() in ("true", "1")


def format_datetime(value):
    """xs:dateTime in UTC with a trailing Z, as Exchange sends it."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_datetime(text):
    """Parse an xs:dateTime sent by a client; naive values are taken as UTC."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # .NET clients send 7 fractional digits; Python 3.10's fromisoformat takes at most 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def ordered(parent, children, order):
    """Append ``children`` (elements) to ``parent`` sorted by their local name's position in ``order``."""
    position = {name: index for index, name in enumerate(order)}
    for child in sorted(children, key=lambda c: position[etree.QName(c).localname]):
        parent.append(child)
    return parent


class SoapRequest:
    """A parsed SOAP request: the operation element and the header values Exchange looks at."""

    def __init__(self, envelope):
        self.envelope = envelope
        header = envelope.find(f"{{{SOAP_NS}}}Header")
        body = envelope.find(f"{{{SOAP_NS}}}Body")
        if body is None or len(body) == 0:
            raise SchemaError("The request has no SOAP Body or the Body is empty.")
        self.operation = body[0]
        self.operation_name = etree.QName(self.operation).localname
        self.header_children = list(header) if header is not None else []
        self.body_children = list(body)
        version = header.find(t("RequestServerVersion")) if header is not None else None
        self.request_version = version.get("Version") if version is not None else None
        impersonation = header.find(t("ExchangeImpersonation")) if header is not None else None
        self.impersonated_smtp = None
        if impersonation is not None:
            smtp = impersonation.find(f"{t('ConnectingSID')}/{t('PrimarySmtpAddress')}")
            if smtp is None:
                smtp = impersonation.find(f"{t('ConnectingSID')}/{t('SmtpAddress')}")
            self.impersonated_smtp = smtp.text.strip() if smtp is not None and smtp.text else None


class SchemaError(Exception):
    """The request is not well-formed SOAP/EWS (Exchange answers ErrorSchemaValidation as a fault)."""


def parse_request(body_bytes):
    """Parse a SOAP request without entity expansion or network access."""
    try:
        envelope = etree.fromstring(body_bytes, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise SchemaError(f"The request failed schema validation: {exc}") from exc
    if envelope.tag != f"{{{SOAP_NS}}}Envelope":
        raise SchemaError("The request is not a SOAP 1.1 envelope.")
    return SoapRequest(envelope)


def server_version_element(version_info):
    """The ``t:ServerVersionInfo`` header element."""
    return etree.Element(t("ServerVersionInfo"), version_info, nsmap={"t": T_NS})


def envelope(body_child, version_info):
    """Serialise a SOAP envelope with the ServerVersionInfo header and one Body child."""
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"s": SOAP_NS})
    header = etree.SubElement(env, f"{{{SOAP_NS}}}Header")
    if version_info:
        header.append(server_version_element(version_info))
    body = etree.SubElement(env, f"{{{SOAP_NS}}}Body")
    body.append(body_child)
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def response_root(operation):
    """``m:{Operation}Response`` with its ``m:ResponseMessages`` container."""
    root = etree.Element(m(f"{operation}Response"), nsmap={"m": M_NS, "t": T_NS})
    messages = etree.SubElement(root, m("ResponseMessages"))
    return root, messages


# Containers the schema requires even in an error message (Exchange sends them empty).
_REQUIRED_ON_ERROR = {
    "GetItem": ("Items",),
    "CreateItem": ("Items",),
    "UpdateItem": ("Items",),
    "MoveItem": ("Items",),
    "CopyItem": ("Items",),
    "GetAttachment": ("Attachments",),
    # exchangelib reads SyncState even from a failed SyncFolderItems message.
    "SyncFolderItems": ("SyncState", "IncludesLastItemInRange"),
}


def response_message(messages, operation, code="NoError", text=None, message_xml=None, response_class=None):
    """Append an ``m:{Operation}ResponseMessage``: ResponseClass, ResponseCode, MessageText when failing.

    Error messages get the empty containers the schema (and exchangelib) expect for the operation.
    """
    if response_class is None:
        response_class = "Success" if code == "NoError" else "Error"
    msg = sub(messages, m(f"{operation}ResponseMessage"), ResponseClass=response_class)
    if code != "NoError":
        sub(msg, m("MessageText"), text or code)
    sub(msg, m("ResponseCode"), code)
    if code != "NoError":
        sub(msg, m("DescriptiveLinkKey"), 0)
    if message_xml is not None:
        msg.append(message_xml)
    if code != "NoError":
        for name in _REQUIRED_ON_ERROR.get(operation, ()):
            sub(msg, m(name), "true" if name == "IncludesLastItemInRange" else None)
    return msg


def fault(code, text, message_xml=None):
    """A SOAP 1.1 Fault as Exchange sends it (HTTP 500): faultcode in types namespace, detail in errors."""
    fault_elem = etree.Element(f"{{{SOAP_NS}}}Fault", nsmap={"s": SOAP_NS})
    faultcode = etree.SubElement(fault_elem, "faultcode", nsmap={"a": T_NS})
    faultcode.text = f"a:{code}"
    faultstring = etree.SubElement(
        fault_elem, "faultstring", {"{http://www.w3.org/XML/1998/namespace}lang": "en-US"}
    )
    faultstring.text = text
    detail = etree.SubElement(fault_elem, "detail")
    etree.SubElement(detail, f"{{{E_NS}}}ResponseCode", nsmap={"e": E_NS}).text = code
    etree.SubElement(detail, f"{{{E_NS}}}Message", nsmap={"e": E_NS}).text = text
    if message_xml is not None:
        detail.append(message_xml)
    return fault_elem


def message_xml_values(qualified_parent, values):
    """A MessageXml element holding ``t:Value Name=...`` children (e.g. BackOffMilliseconds)."""
    container = etree.Element(qualified_parent, nsmap={"t": T_NS})
    for name, value in values.items():
        sub(container, t("Value"), value, Name=name)
    return container
