"""Test support: real loopback servers, a real mitmdump, and their pytest fixtures."""
