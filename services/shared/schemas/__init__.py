"""Pydantic wire contracts used by more than one service."""
