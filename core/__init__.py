"""The foundation every stage stands on: settings, the store, the retrain lock, inert text."""
