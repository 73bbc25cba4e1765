#!/usr/bin/env bash
# Install Apache Kafka (KRaft broker + controller, and its storage tool) as jars into ./.tools/kafka-<version>/libs.
#
# The jars come from Maven Central: `mvn dependency:copy-dependencies` on scripts/tools/kafka/pom.xml
# (org.apache.kafka:kafka_2.13, kafka-server, kafka-storage and Log4j 2 behind SLF4J) with every runtime
# dependency. devstack/apache_kafka.py starts them with `java -cp '.tools/kafka-<version>/libs/*'`.
# Idempotent: when the stamp of the pinned version is there it does nothing but print the version.
# Needs mvn and a JDK 17 or newer (Kafka 4 brokers need Java 17).
set -euo pipefail

KAFKA_VERSION="4.1.1"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
home="$root/.tools/kafka-$KAFKA_VERSION"
stamp="$home/.installed"

fail() {
    echo "ensure-tools (kafka): $*" >&2
    exit 1
}

java_major() {
    # `java -version` prints e.g.: openjdk version "17.0.15" 2025-04-15 (or "1.8.0_392" for Java 8).
    local version
    version="$(java -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n 1)"
    version="${version#1.}"
    echo "${version%%[.+-]*}"
}

command -v java >/dev/null || fail "java is required to run Apache Kafka (apt-get install openjdk-17-jre-headless)"
major="$(java_major)"
[[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] || fail "Apache Kafka $KAFKA_VERSION needs Java 17 or newer; java is ${major:-unknown}"

if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$KAFKA_VERSION" ]]; then
    command -v mvn >/dev/null || fail "mvn is required to fetch Apache Kafka from Maven Central (apt-get install maven)"
    mkdir -p "$root/.tools"
    work="$(mktemp -d "$root/.tools/.kafka-install.XXXXXX")"
    trap 'rm -rf "$work"' EXIT

    # A private local repository, thrown away afterwards: only the copied jars are kept.
    mvn -B -q -f "$root/scripts/tools/kafka/pom.xml" \
        -Dkafka.version="$KAFKA_VERSION" \
        -Dmaven.repo.local="$work/repository" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$work/libs" >"$work/mvn.log" 2>&1 ||
        fail "mvn dependency:copy-dependencies failed for Kafka $KAFKA_VERSION: $(grep -m 3 '^\[ERROR\]' "$work/mvn.log" | tr '\n' ' ')"
    [[ -f "$work/libs/kafka_2.13-$KAFKA_VERSION.jar" ]] || fail "mvn did not fetch kafka_2.13-$KAFKA_VERSION.jar"

    # Move into place only once every jar is there, so an interrupted run never leaves a half set of jars
    # that a later run would mistake for an installed one.
    rm -rf "$home"
    mkdir -p "$home"
    mv "$work/libs" "$home/libs"
    echo "$KAFKA_VERSION" >"$stamp"
fi

echo "Apache Kafka $KAFKA_VERSION ($home, $(find "$home/libs" -name '*.jar' | wc -l) jars, java $major)"
