"""The registry service: identity (organizations, projects, tokens, ext_authz) and the
registry of components and blueprints."""
