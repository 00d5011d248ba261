"""Data: GSM8K loading, formatting for training and prompting, answer extraction, safe arithmetic."""
