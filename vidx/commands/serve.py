"""`vidx serve`: the web app over an index (search by photo, people, videos, jobs) and its JSON API."""

from __future__ import annotations

import ipaddress

import click

from vidx.commands.common import Context, db_option, db_url_for, device_option, open_catalog, out_option, pass_ctx
from vidx.output import err, say


@click.command("serve")
@out_option
@db_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anyone who can reach it can see the archive's people and videos.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port to listen on.")
@device_option
@pass_ctx
def serve_cmd(ctx: Context, out_dir: str, db_url: str | None, host: str, port: int, device: str) -> None:
    """Browse and search the index in a web browser: find a person by photo and watch the moment, name people,
    see each video's tracks and what jobs are doing. JSON API under /api (schema: /api/openapi.json).

    Only this machine can connect unless --host says otherwise; videos and thumbnails are served only if the
    index names them.
    """
    from web.app import serve

    url = db_url_for(out_dir, db_url)
    open_catalog(out_dir, db_url).close()  # no index here, or a bad URL: one clear line now, not on each request
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        err.print(f"warning: listening on {host}: every machine that can reach it can browse this archive",
                  style="yellow")
    serve(out_dir, url, host=host, port=port, cache_dir=ctx.cache_dir, device=device,
          on_ready=lambda address: say(f"vidx serve: open {address} (Ctrl-C stops)"))
