"""ipywidgets consoles for a running swarm (extra ``notebooks``).

=====================================  ==============================================
``timmy.widgets.desktop(swarm)``       agents, open auctions and their bids, tasks with
                                       a status filter, post / spawn / stop, live charts
                                       and an auction inspector
``timmy.widgets.mobile(swarm)``        status header, live feed, post box, latest results
``timmy.widgets.inspect(swarm, id)``   every bid of a task's auctions, the rule, the
                                       winner, the price and why that bid won
``timmy.widgets.dashboard(kind)``      a whole Voilà page ("desktop" / "mobile") attached
                                       to the swarm service, with its CSS and a link to
                                       the other page (``dashboards/*.ipynb``)
=====================================  ==============================================

``swarm`` is a local `timmy.Swarm` or an attached client: only its public methods
are used. Consoles update from ``swarm.subscribe`` (no polling) and redraw at most
every ``interval`` seconds; closing the returned box unsubscribes. Importing this
package imports no widget library: ipywidgets is loaded when a console is built.

Modules, one job each: `state` (events folded into a model), `throttle` (coalesced
redraws), `render` (escaped HTML), `console` (what desktop and mobile share),
`desktop`, `mobile`, `inspector`, `page` (the dashboards).
"""

from __future__ import annotations

from timmy.widgets.desktop import DesktopConsole, desktop
from timmy.widgets.inspector import AuctionStory, Inspector, explain, inspect
from timmy.widgets.mobile import MobileConsole, mobile
from timmy.widgets.page import dashboard

__all__ = ["AuctionStory", "DesktopConsole", "Inspector", "MobileConsole", "dashboard",
           "desktop", "explain", "inspect", "mobile"]
