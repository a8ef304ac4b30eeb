"""A small MCP server for the proxy's tests (``tests/test_mcp_proxy.py``), run over stdio.

``word_count`` is harmless; ``delete_file`` deletes a real file, so a test can tell
whether a gated call ran. A resource and a prompt show the proxy relays them too.
"""

from __future__ import annotations

from pathlib import Path

from mcp.server.mcpserver import MCPServer

server = MCPServer("files", instructions="Files you may count words in, or delete.")


@server.tool()
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


@server.tool()
def delete_file(path: str) -> str:
    """Delete the file at path, for good."""
    Path(path).unlink()
    return f"deleted {path}"


@server.resource("notes://readme", mime_type="text/plain")
def readme() -> str:
    """What this server is for."""
    return "a test server"


@server.prompt()
def tidy(folder: str) -> str:
    """Ask for a folder to be tidied up."""
    return f"Delete the temporary files in {folder}."


if __name__ == "__main__":
    server.run()
