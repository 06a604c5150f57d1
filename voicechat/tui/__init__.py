"""The Textual conversation screen. It renders engine events and sends the user's commands back."""
