"""Started by every Python process the tests launch (this directory is first on PYTHONPATH):
install the network guard before any application code runs."""

import os

if os.environ.get("NETGUARD_REPORT_DIR"):
    import enclave_netguard

    enclave_netguard.install()
