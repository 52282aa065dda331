#!/usr/bin/env bash
# Builds the Java device client (javac --release 17, no build tool, no downloads) and runs its
# JUnit 5 tests against the real gateway binary ($PUSHGATE_BIN, default target/debug/pushgate).
# Installs Debian's openjdk-17-jdk-headless and junit5 when missing (CI runs as root).
# Exits non-zero on a compile error, a failed test, or when no test ran.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
junit=/usr/share/java/junit-platform-console-standalone.jar

if ! command -v javac >/dev/null 2>&1 || [ ! -f "$junit" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "clients/java/ci.sh: need javac 17+ and $junit: apt-get install openjdk-17-jdk-headless junit5" >&2
        exit 1
    fi
    echo "clients/java/ci.sh: installing openjdk-17-jdk-headless junit5"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openjdk-17-jdk-headless junit5 >/dev/null
fi

export PUSHGATE_BIN=${PUSHGATE_BIN:-$root/target/debug/pushgate}
case $PUSHGATE_BIN in /*) ;; *) PUSHGATE_BIN=$root/$PUSHGATE_BIN ;; esac
if [ ! -x "$PUSHGATE_BIN" ]; then
    echo "clients/java/ci.sh: no gateway binary at $PUSHGATE_BIN (cargo build, or set PUSHGATE_BIN)" >&2
    exit 1
fi

build=$here/build
rm -rf "$build"
mkdir -p "$build/main" "$build/test" "$build/examples" "$build/readme"

echo "clients/java: compiling"
javac --release 17 -Xlint:all -Xdoclint:all,-missing -Werror -encoding UTF-8 -d "$build/main" $(find "$here/src/main/java" -name '*.java')

# The README's examples (its java blocks, in order) must compile exactly as written and match examples/.
readme_block() { # N: the Nth java block of README.md
    awk -v want="$1" '/^```java$/ {n++; if (n == want) {on=1; next}} /^```$/ {if (on) exit} on' "$here/README.md"
}
n=0
for example in PrintNotifications SubscribeNews; do
    n=$((n + 1))
    readme_block "$n" > "$build/readme/$example.java"
    if ! diff -u "$here/examples/$example.java" "$build/readme/$example.java"; then
        echo "clients/java/ci.sh: README.md's java block $n differs from examples/$example.java" >&2
        exit 1
    fi
    javac --release 17 -Xlint:all -Werror -encoding UTF-8 -cp "$build/main" -d "$build/examples" \
        "$here/examples/$example.java"
    javac --release 17 -Xlint:all -Werror -encoding UTF-8 -cp "$build/main" -d "$build/readme" \
        "$build/readme/$example.java"
done

javac --release 17 -Xlint:all,-try -Werror -encoding UTF-8 -cp "$build/main:$junit" -d "$build/test" \
    $(find "$here/src/test/java" -name '*.java')

echo "clients/java: testing against $PUSHGATE_BIN"
set +e
timeout 240 java -jar "$junit" --disable-banner --disable-ansi-colors --details=tree \
    --include-engine=junit-jupiter --fail-if-no-tests --reports-dir="$build/reports" \
    -cp "$build/main:$build/test" --scan-classpath "$build/test" 2>&1 | tee "$build/junit.txt"
status=${PIPESTATUS[0]}
set -e
if [ "$status" != 0 ]; then
    echo "clients/java/ci.sh: JUnit failed (exit $status)" >&2
    exit "$status"
fi
passed=$(sed -n 's/^\[ *\([0-9]*\) tests successful *\]$/\1/p' "$build/junit.txt")
failed=$(sed -n 's/^\[ *\([0-9]*\) tests failed *\]$/\1/p' "$build/junit.txt")
if [ -z "$passed" ] || [ "$passed" = 0 ] || [ "$failed" != 0 ]; then
    echo "clients/java/ci.sh: no passing tests (successful=${passed:-?}, failed=${failed:-?})" >&2
    exit 1
fi
echo "clients/java: $passed tests passed"
