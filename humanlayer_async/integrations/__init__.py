"""Adapters that gate the tools of agent frameworks by a ``Policy``, through our channels.

Each module imports its framework, so import the one you use: ``humanlayer_async.integrations.
langchain``, ``.openai_agents`` or ``.pydantic_ai`` (each needs its framework installed).
"""
