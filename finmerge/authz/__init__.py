"""Server-side access control that MLflow's own basic-auth app does not express (see docs/security.md)."""
