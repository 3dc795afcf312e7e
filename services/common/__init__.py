"""Code shared by every service container (stdlib only, so each image can carry it)."""
