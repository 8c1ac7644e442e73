"""The pull path: route a request to an upstream, answer from the store when we
can, otherwise fetch once per digest and stream to every waiting client."""
