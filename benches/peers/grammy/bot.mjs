// grammY echo bot: comparison peer for Switchboard benchmarks.
//
// Env:
//   BOT_TOKEN  bot token, e.g. 123456:TEST-token (the numeric prefix becomes botInfo.id)
//   API_ROOT   base URL of the Telegram Bot API (stand-in), e.g. http://127.0.0.1:9999 (no trailing slash)
//   PORT       webhook listen port on 127.0.0.1
//   SECRET     webhook secret (X-Telegram-Bot-Api-Secret-Token)
//
// Prints "ready" on stdout once listening. Stop with SIGTERM/SIGINT.
import http from "node:http";
import { Bot, webhookCallback } from "grammy";

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`missing env ${name}`);
    process.exit(2);
  }
  return v;
}

const token = need("BOT_TOKEN");
const apiRoot = need("API_ROOT").replace(/\/+$/, "");
const port = Number(need("PORT"));
const secret = need("SECRET");

const bot = new Bot(token, {
  client: { apiRoot },
  // Static botInfo: bot.init() does not call getMe.
  botInfo: {
    id: Number(token.split(":")[0]) || 1,
    is_bot: true,
    first_name: "PeerBot",
    username: "peer_bot",
    can_join_groups: true,
    can_read_all_group_messages: false,
    supports_inline_queries: false,
    can_connect_to_business: false,
    has_main_web_app: false,
  },
});

bot.on("message:text", (ctx) => ctx.reply("echo: " + ctx.message.text));

// Default onTimeout is "throw" after 10 s; the update handler (incl. the
// sendMessage call) is awaited before the webhook response is written.
const handle = webhookCallback(bot, "http", { secretToken: secret });

const server = http.createServer(async (req, res) => {
  try {
    await handle(req, res);
  } catch (err) {
    console.error("update failed:", err?.message ?? err);
    if (!res.headersSent) res.writeHead(500);
    res.end();
  }
});

server.listen(port, "127.0.0.1", () => {
  process.stdout.write("ready\n");
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  });
}
