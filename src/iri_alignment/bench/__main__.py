from iri_alignment.bench.cli import main

main()
