#!/bin/bash
# A CA of its own and a server certificate it signed, valid for localhost and
# 127.0.0.1 (for tests and benchmarks, not for production): DIR/ca.pem,
# DIR/cert.pem, DIR/key.pem. `trove serve --tls-cert DIR/cert.pem --tls-key
# DIR/key.pem`; clients take `--tls-ca DIR/ca.pem`.
set -euo pipefail
D=${1:?usage: scripts/tls-cert.sh DIR}
mkdir -p "$D"
cd "$D"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=trove-test-ca -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout key.pem -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -extfile san.ext -out cert.pem 2>/dev/null
rm -f server.csr san.ext ca.srl
echo "$D: ca.pem cert.pem key.pem"
