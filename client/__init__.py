"""The client role: one requests.Session per scenario session."""
