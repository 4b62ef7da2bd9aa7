"""consentry-console as a Textual app. It receives a backend factory, so tests
hand it a fake and `__main__` hands it the real broker client."""

from __future__ import annotations

from textual.app import App
from textual.driver import Driver

from console.backend import Backend, BackendFactory, Profile, Settings
from console.input_bursts import coalescing
from console.screens.connect import ConnectScreen
from console.screens.main import MainScreen


class ConsoleApp(App[None], inherit_bindings=False):
    """Textual's own Ctrl-Q / Ctrl-C / Ctrl-P bindings are not inherited: the
    remote shell needs those keys (Ctrl-P is bash's previous command). F10
    quits instead, asking first if sessions are open."""

    CSS_PATH = "app.tcss"
    TITLE = "consentry console"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, make_backend: BackendFactory, settings: Settings) -> None:
        super().__init__()
        self.make_backend = make_backend
        self.settings = settings
        self.backend: Backend | None = None

    def get_driver_class(self) -> type[Driver]:
        # An unbracketed paste arrives as one paste, not a key per character.
        return coalescing(super().get_driver_class())

    def on_mount(self) -> None:
        self.push_screen(ConnectScreen(self.settings), self._connected)

    async def connect(self, settings: Settings) -> Profile:
        """Log in with `settings`; raises `ConsoleError` with a message for people."""
        backend = self.make_backend(settings)
        profile = await backend.login()
        self.backend = backend
        self.settings = settings
        return profile

    def _connected(self, profile: Profile | None) -> None:
        if profile is not None:
            self.sub_title = f"{profile.display} ({profile.role})"
            self.push_screen(MainScreen(profile))
