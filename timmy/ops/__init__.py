"""Operating timmy: the dashboards launcher, Voilà's kernel culling, Chromium, the chaos soak."""
