"""The first screen: where the broker is and who you are."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, Static

from console.backend import Profile, Settings
from console.errors import ConsoleError
from console.format import literal
from console.identity import PassphraseNeeded
from console.screens.app_access import console_app


class ConnectScreen(Screen[Profile]):
    """Collects the settings, logs in, and dismisses with the profile."""

    BINDINGS = [("f10", "app.quit", "Quit")]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(id="connect-box"):
            yield Static("consentry console", id="connect-title")
            yield Static("Sign in to the broker with your SSH key.", classes="hint")
            with Grid(id="connect-form"):
                yield Label("Broker")
                yield Input(s.broker, id="broker", placeholder="wss://broker.example:8443")
                yield Label("CA file")
                yield Input(str(s.ca), id="ca", placeholder="certs/ca.crt")
                yield Label("SSH key")
                yield Input(str(s.identity), id="identity", placeholder="~/.ssh/id_ed25519")
                yield Label("User")
                yield Input(s.user, id="user", placeholder="your login at the broker")
                yield Label("Passphrase")
                yield Input(id="passphrase", password=True,
                            placeholder="only if your key has one")
            yield Button("Connect", id="connect", variant="primary")
            yield Static("", id="connect-status")
        yield Footer()

    def _form(self) -> Settings:
        def value(widget_id: str) -> str:
            return self.query_one(f"#{widget_id}", Input).value.strip()

        return replace(
            self.settings, broker=value("broker"), ca=Path(value("ca")),
            identity=Path(value("identity")), user=value("user"),
            passphrase=self.query_one("#passphrase", Input).value or None,
        )

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#connect-status", Static)
        status.update(literal(text, 400))
        status.set_class(error, "error")

    @on(Button.Pressed, "#connect")
    @on(Input.Submitted)
    def submit(self) -> None:
        settings = self._form()
        if not settings.user:
            self._status("Type your user name at the broker.", error=True)
            return
        self.query_one("#connect", Button).disabled = True
        self._status(f"Connecting to {settings.broker} ...")
        self._connect(settings)

    @work(exclusive=True, group="connect")
    async def _connect(self, settings: Settings) -> None:
        try:
            profile = await console_app(self).connect(settings)
        except PassphraseNeeded as exc:
            self._status(f"{exc}: type it in the Passphrase field.", error=True)
            self.query_one("#passphrase", Input).focus()
        except ConsoleError as exc:
            self._status(str(exc), error=True)
        else:
            self.dismiss(profile)
        finally:
            if self.is_attached:
                self.query_one("#connect", Button).disabled = False
