"""`klpfleet dashboard`: a live web view of the fleet and its rollouts, served from the package (Starlette on
uvicorn; the page's JavaScript ships in static/, nothing is fetched from a CDN), reading the same read models as
the CLI. Read-only unless started with --allow-actions and a token."""
