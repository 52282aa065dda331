package io.pushgate;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermission;
import java.util.EnumSet;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The per-install secret: created once, private, reused. */
class SecretStoreTest {
    @TempDir
    Path dir;

    @Test
    void firstUseCreatesAPrivate32ByteSecretThatIsThenReused() throws IOException {
        File f = dir.resolve("device.secret").toFile();
        FileSecretStore store = new FileSecretStore(f);
        assertNull(store.load());
        byte[] first = DeviceSecret.loadOrCreate(store);
        assertEquals(32, first.length);
        assertEquals(EnumSet.of(PosixFilePermission.OWNER_READ, PosixFilePermission.OWNER_WRITE),
                Files.getPosixFilePermissions(f.toPath()));
        assertEquals(Hex.encode(first) + "\n", Files.readString(f.toPath()));
        assertArrayEquals(first, DeviceSecret.loadOrCreate(new FileSecretStore(f)));
        assertEquals(1, dir.toFile().list().length, "temporary file left behind");
        assertTrue(!java.util.Arrays.equals(first, DeviceSecret.generate()));
    }

    @Test
    void aCorruptFileIsAnErrorNotANewIdentity() throws IOException {
        Path f = dir.resolve("bad.secret");
        Files.writeString(f, "not hex\n");
        assertThrows(IOException.class, () -> DeviceSecret.loadOrCreate(new FileSecretStore(f.toFile())));
        Files.writeString(f, "00112233");
        assertThrows(IOException.class, () -> new FileSecretStore(f.toFile()).load(), "4 bytes is too short");
        assertEquals("00112233", Files.readString(f), "the file must not be overwritten");
    }

    @Test
    void readsTheCliSecretFileFormat() throws IOException {
        Path f = dir.resolve("cli.secret");
        Files.writeString(f, "00112233445566778899AABBCCDDEEFF\n");
        assertArrayEquals(WireTest.hex("00112233445566778899aabbccddeeff"), new FileSecretStore(f.toFile()).load());
    }
}
