"""Small agents a newcomer can run and read."""
