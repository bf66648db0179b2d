"""ipywidgets consoles for a running swarm, local or attached (extra ``notebooks``; ipywidgets
is loaded only when a console is built). Each updates from ``swarm.subscribe``, redraws at most
every ``interval`` seconds, and unsubscribes when its box is closed:

=====================================  ==============================================
``timmy.widgets.desktop(swarm)``       stat cards and charts, agents, recent auctions,
                                       tasks with a status filter, post / spawn / stop
                                       and an auction inspector
``timmy.widgets.mobile(swarm)``        status header, live feed, post box, latest results
``timmy.widgets.inspect(swarm, id)``   every bid of a task's auctions, the rule, the
                                       winner, the price and why that bid won
``timmy.widgets.dashboard(kind)``      a whole Voilà page ("desktop" / "mobile") attached
                                       to the swarm service, with its CSS and a link to
                                       the other page (``dashboards/*.ipynb``)
=====================================  ==============================================
"""

from __future__ import annotations

from timmy.widgets.desktop import DesktopConsole, desktop
from timmy.widgets.inspector import AuctionStory, Inspector, explain, inspect
from timmy.widgets.mobile import MobileConsole, mobile
from timmy.widgets.page import dashboard

__all__ = ["AuctionStory", "DesktopConsole", "Inspector", "MobileConsole", "dashboard",
           "desktop", "explain", "inspect", "mobile"]
