"""Scripts run by `copier update` (`_migrations` in copier.yml) in the node being updated."""
