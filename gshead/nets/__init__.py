"""Fixed (not learned by gshead) networks used by losses and metrics, loaded from local files."""
