"""Identity: organizations, projects and API tokens."""
