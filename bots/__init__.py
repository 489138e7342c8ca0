"""Chat frontends. The Slack bot (chat through the same pipeline, alert delivery) lives here."""
