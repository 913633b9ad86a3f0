"""fake-vzctl / fake-vzlist: file-backed stand-ins for OpenVZ's legacy vzctl 4.9 and vzlist (see docs/fake-vzctl.md)."""
