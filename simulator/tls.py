"""Self-signed CA and server certificate for the local tenant (msal needs https://).

Works with cryptography 3.4.8 (which still wants ``backend=``) and newer
releases.  Keys are generated once per process: every Tenant in a test run
shares the same CA, so clients may keep one ``verify=`` path.  A state
directory that already holds a valid certificate keeps it: a restarted demo
tenant is still trusted by the clients that stored its CA.
"""

import datetime
import ipaddress
import os
import ssl
import threading

from cryptography import x509
from cryptography.hazmat.backends import default_backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_lock = threading.Lock()
_material = None


def generate_rsa_key():
    """A 2048-bit RSA private key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048, backend=default_backend())


def _pem_key(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _build():
    now = datetime.datetime.utcnow() - datetime.timedelta(days=1)
    ca_key = generate_rsa_key()
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Exchange Connector Local Tenant CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "exchange_connector simulator"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256(), default_backend())
    )
    server_key = generate_rsa_key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256(), default_backend())
    )
    return {
        "ca_pem": ca_cert.public_bytes(serialization.Encoding.PEM),
        "cert_pem": server_cert.public_bytes(serialization.Encoding.PEM),
        "key_pem": _pem_key(server_key),
    }


def certificate_material():
    """PEM bytes of the process-wide CA and server certificate/key (generated on first use)."""
    global _material
    with _lock:
        if _material is None:
            _material = _build()
        return _material


#: A kept server certificate is replaced this long before it expires.
RENEW_BEFORE = datetime.timedelta(days=30)


def _kept_certificates(paths):
    """True when ``paths`` hold a CA, a server certificate it signed and its key, valid for a while yet."""
    try:
        with open(paths["ca.pem"], "rb") as handle:
            ca_cert = x509.load_pem_x509_certificate(handle.read(), default_backend())
        with open(paths["server.pem"], "rb") as handle:
            server_cert = x509.load_pem_x509_certificate(handle.read(), default_backend())
        with open(paths["server.key"], "rb") as handle:
            server_key = serialization.load_pem_private_key(handle.read(), None, default_backend())
    except (OSError, ValueError):
        return False
    expires = getattr(server_cert, "not_valid_after_utc", None) or server_cert.not_valid_after.replace(
        tzinfo=datetime.timezone.utc)
    return (
        server_cert.issuer == ca_cert.subject
        and server_cert.public_key().public_numbers() == server_key.public_key().public_numbers()
        and expires - RENEW_BEFORE > datetime.datetime.now(datetime.timezone.utc)
    )


def write_certificates(state_dir):
    """Write ca.pem, server.pem (cert + CA) and server.key to state_dir; return their paths.

    Certificates already in ``state_dir`` and still valid are kept as they are.
    """
    paths = {name: os.path.join(state_dir, name) for name in ("ca.pem", "server.pem", "server.key")}
    if _kept_certificates(paths):
        return paths
    material = certificate_material()
    with open(paths["ca.pem"], "wb") as handle:
        handle.write(material["ca_pem"])
    with open(paths["server.pem"], "wb") as handle:
        handle.write(material["cert_pem"] + material["ca_pem"])
    with open(paths["server.key"], "wb") as handle:
        handle.write(material["key_pem"])
    os.chmod(paths["server.key"], 0o600)
    return paths


class DeferredHandshakeContext(ssl.SSLContext):
    """An SSLContext whose sockets do not shake hands on accept().

    The server's single accept thread would otherwise wait for the TLS handshake of each
    client: one that connects and never starts TLS would stop the whole tenant. The
    handshake happens in the connection's own thread instead (see ``server._QuietHandler``),
    with a timeout.
    """

    def wrap_socket(self, sock, *args, do_handshake_on_connect=True, **kwargs):
        return super().wrap_socket(sock, *args, do_handshake_on_connect=False, **kwargs)


def server_ssl_context(state_dir):
    """An ssl.SSLContext serving the tenant certificate; also writes ca.pem to state_dir."""
    paths = write_certificates(state_dir)
    context = DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(paths["server.pem"], paths["server.key"])
    return context, paths["ca.pem"]
