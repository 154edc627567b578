# Workload image for test/node/: the unmodified AWS SDK for JavaScript v3 (@aws-sdk/client-s3 and
# @aws-sdk/client-sts at the versions package-lock.json resolves package.json's ranges to, passed
# in by scripts/build-images.sh) on the base image built here, which carries Node. Workloads run
# their script with `node --input-type=module -e` in /opt/js-sdk, where the SDK resolves.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG CLIENT_S3_VERSION
ARG CLIENT_STS_VERSION
WORKDIR /opt/js-sdk
RUN printf '{"name":"js-sdk-workload","private":true,"type":"module"}\n' >package.json \
 && npm install --no-audit --no-fund --omit=dev --save-exact \
      "@aws-sdk/client-s3@${CLIENT_S3_VERSION}" "@aws-sdk/client-sts@${CLIENT_STS_VERSION}" \
 && npm cache clean --force
USER 1000:1000
CMD ["node", "-e", "console.log(require('/opt/js-sdk/node_modules/@aws-sdk/client-sts/package.json').version)"]
