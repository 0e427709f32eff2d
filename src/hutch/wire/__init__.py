"""Wire types of the HTTP APIs, shared by the server (hutch.api) and the SDK (hutch.client).

`XCreate`/`XUpdate` are what clients send: unknown fields are refused, so nobody can set a
machine's project, state or node by adding a field. `XView` is what the server sends: unknown
fields are ignored, so an older client keeps working against a newer server.
"""
