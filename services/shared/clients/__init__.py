"""Typed httpx clients services use to call each other."""
