"""One module per page group, each with a `router` made by `render.pages()`; listed in
`hutch.web.PAGES`."""
