"""What every iceOS service shares: settings, store, Redis, identity, errors, server bootstrap."""
