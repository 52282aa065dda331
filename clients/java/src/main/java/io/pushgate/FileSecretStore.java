package io.pushgate;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.FileInputStream;
import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;

/**
 * A {@link SecretStore} in one file holding the secret as hex (the format of
 * {@code pushgate device --secret-file}). Written to a temporary file readable only by its owner,
 * then renamed into place. On Android pass a file under {@code Context.getFilesDir()}.
 */
public final class FileSecretStore implements SecretStore {
    private final File file;

    /** A store in {@code file}; its directory must exist. */
    public FileSecretStore(File file) {
        this.file = file;
    }

    @Override
    public byte[] load() throws IOException {
        if (!file.exists()) {
            return null;
        }
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        try (InputStream in = new FileInputStream(file)) {
            byte[] chunk = new byte[256];
            int n;
            while ((n = in.read(chunk)) > 0) {
                buf.write(chunk, 0, n);
                if (buf.size() > 1024) {
                    throw new IOException(file + ": too large for a device secret");
                }
            }
        }
        String text = new String(buf.toByteArray(), StandardCharsets.US_ASCII).trim();
        byte[] secret = Hex.decode(text);
        if (secret == null || !DeviceSecret.validLength(secret.length)) {
            throw new IOException(file + ": not a device secret (32 to 128 hex digits)");
        }
        return secret;
    }

    @Override
    public void save(byte[] secret) throws IOException {
        File dir = file.getAbsoluteFile().getParentFile();
        File tmp = File.createTempFile(".secret", ".tmp", dir);
        try {
            tmp.setReadable(false, false);
            tmp.setWritable(false, false);
            tmp.setReadable(true, true);
            tmp.setWritable(true, true);
            try (FileOutputStream out = new FileOutputStream(tmp)) {
                out.write((Hex.encode(secret) + "\n").getBytes(StandardCharsets.US_ASCII));
                out.getFD().sync();
            }
            if (!tmp.renameTo(file)) {
                throw new IOException("cannot rename " + tmp + " to " + file);
            }
        } finally {
            if (tmp.exists()) {
                tmp.delete();
            }
        }
    }
}
