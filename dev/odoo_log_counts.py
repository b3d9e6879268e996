"""Print 'passed failed skipped' from an Odoo test log.

Odoo closes with 'N failed, M error(s) of T tests when loading database ...' and logs each skip as
'skipped <test> : <reason>'. A browser tour whose Chrome did not start is such a skip, which the
closing line would count as a success; the caller treats skips as a failure of the run.
"""

import re
import sys

with open(sys.argv[1], encoding="utf-8", errors="replace") as handle:
    text = handle.read()
failed = errors = total = 0
for match in re.finditer(r"(\d+) failed, (\d+) error\(s\) of (\d+) tests", text):
    failed += int(match.group(1))
    errors += int(match.group(2))
    total += int(match.group(3))
skipped = len(re.findall(r" INFO \S+ odoo\.addons\.[\w.]+: skipped ", text))
# Tracebacks logged outside a test (e.g. at module install) are failures too.
install_errors = len(re.findall(r" ERROR \S+ odoo\.(modules|tools\.convert|sql_db)", text))
failures = failed + errors + install_errors
print(max(total - failed - errors - skipped, 0), failures, skipped)
