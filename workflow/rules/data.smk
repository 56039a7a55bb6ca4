# Data: download and verify CIFAR, or generate the embedded shapes dataset.
# ImageNet is the user's folder and is checked by the first job that reads it.


rule prepare_data:
    output:
        data_inputs(),
    benchmark:
        f"{RESULTS}/benchmarks/prepare_data/data.tsv",
    log:
        f"{RESULTS}/logs/data.log",
    params:
        study=STUDY,
        dataset=PARAMS["data"]["dataset"],
        settings=PARAMS["data"],
    threads: 1
    conda:
        ENV
    shell:
        "iri --threads {threads} data prepare --dataset {params.dataset} {params.study} > {log} 2>&1"


rule data:
    input:
        data_inputs(),
