# Workload image for test/node/: the unmodified AWS CLI and boto3 (the versions the rest of the
# suite pins in test/harness/requirements.txt, passed in by scripts/build-images.sh) on the base
# image built here, which also carries Node for the JS SDK v3.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG AWSCLI_VERSION
ARG BOTO3_VERSION
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/aws \
 && /opt/aws/bin/pip install --no-cache-dir "awscli==${AWSCLI_VERSION}" "boto3==${BOTO3_VERSION}"
ENV PATH=/opt/aws/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 1000:1000
CMD ["aws", "--version"]
