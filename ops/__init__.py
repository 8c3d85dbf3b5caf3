"""The native stack's tooling: start, stop and inspect the services, deploy connectors and SQL, run the demo.

Above the shared core (cryptopipe/) and beside the functions: nothing in cryptopipe/ or functions/ imports it.
"""
