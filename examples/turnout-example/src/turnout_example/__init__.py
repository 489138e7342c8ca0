"""An example third-party Turnout plugin package: a provider and a router."""
