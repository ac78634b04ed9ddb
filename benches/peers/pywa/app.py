"""pywa echo bot: comparison peer for Switchboard benchmarks.

Env:
  PHONE_ID           phone number id (must match metadata.phone_number_id of incoming updates)
  ACCESS_TOKEN       Graph API bearer token
  VERIFY_TOKEN       hub.verify_token for the GET challenge
  APP_SECRET         app secret; X-Hub-Signature-256 is validated with it
  GRAPH_URL          Graph API base URL, e.g. http://127.0.0.1:9999 (pywa's version is appended:
                     /v26.0) or with the version already in it, e.g. http://127.0.0.1:9999/v21.0
  PORT               listen port on 127.0.0.1
  GRAPH_API_VERSION  optional, default: pywa's latest (utils.Version.GRAPH_API)
  LOG_LEVEL          optional uvicorn log level, default "warning"

Run:  .venv/bin/python app.py      -> prints "ready" on stdout once listening.

Note: pywa's FastAPI route validates the signature, then schedules the
(sync) handler as a FastAPI BackgroundTask, i.e. the 200 is sent to the
caller BEFORE the handler (and its send-message call) runs.

pywa 4.x requires entry[0].changes[0].value.contacts[0].user_id (the
business-scoped user id, BSUID) in message webhooks; without it the update
is dropped with "Failed to construct update ... KeyError: 'user_id'" (the
webhook still answers 200).
"""

import os
import re
import sys

import httpx
import uvicorn
from fastapi import FastAPI
from pywa import WhatsApp, filters, types, utils
from pywa.utils import UserIdentifier


def need(name: str) -> str:
    v = os.environ.get(name)
    if not v:
        sys.exit(f"missing env {name}")
    return v


PHONE_ID = need("PHONE_ID")
GRAPH_URL = need("GRAPH_URL").rstrip("/")
_ver_in_url = re.search(r"/v(\d+(?:\.\d+)?)$", GRAPH_URL)
API_VERSION = (
    os.environ.get("GRAPH_API_VERSION")
    or (_ver_in_url and _ver_in_url.group(1))
    or str(utils.Version.GRAPH_API)
)
# GRAPH_URL may be given with or without the version segment (".../v26.0").
GRAPH_BASE = GRAPH_URL if _ver_in_url else f"{GRAPH_URL}/v{float(str(API_VERSION))}"

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

wa = WhatsApp(
    phone_id=PHONE_ID,
    token=need("ACCESS_TOKEN"),
    # trust_env=False: ignore *_PROXY env vars for the local stand-in.
    session=httpx.Client(timeout=10.0, trust_env=False),
    server=app,
    webhook_endpoint="/",
    verify_token=need("VERIFY_TOKEN"),
    app_secret=need("APP_SECRET"),
    validate_updates=True,  # X-Hub-Signature-256 checked (403 on mismatch)
    api_version=API_VERSION,
    # Reply with {"to": wa_id} like classic Cloud API clients, not {"recipient": BSUID}.
    user_identifier_priority=(
        UserIdentifier.WA_ID,
        UserIdentifier.BSUID,
        UserIdentifier.PARENT_BSUID,
    ),
    # No callback_url / app_id: pywa makes no Graph API call at startup.
)

# pywa has no constructor option for the Graph host: GraphAPI.__init__
# hard-codes session.base_url = f"https://graph.facebook.com/v{api_version}".
# Re-point the httpx session it owns at the stand-in (same path layout).
wa.api._session.base_url = GRAPH_BASE


@wa.on_message(filters.text)
def echo(_: WhatsApp, msg: types.Message) -> None:
    msg.reply_text("echo: " + msg.text)


class _Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.started:
            print("ready", flush=True)


if __name__ == "__main__":
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=int(need("PORT")),
        workers=1,
        access_log=False,
        log_level=os.environ.get("LOG_LEVEL", "warning"),
    )
    _Server(config).run()
