"""The client side shared by the agent and the console: nothing here imports a server module."""
