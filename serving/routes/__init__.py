"""HTTP routes of tfchat's server, one module per API: TF Serving's REST API and OpenAI's."""
