"""What turns a config into objects (engines, models, rewards, labelers, data), once, for every command."""
