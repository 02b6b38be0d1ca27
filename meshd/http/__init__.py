"""HTTP/1.1 proxying: sans-IO codec, header rules, synthetic responses and the connection loop."""
