#include "loaders/atomic_write.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "shiftadd/error.h"

namespace shiftadd {
namespace {

std::string errno_text() { return std::strerror(errno); }

std::string exists_message(const std::string& path) {
  return path + ": file already exists; refusing to replace it (use --force to overwrite)";
}

// Owns the temporary file until it has been renamed into place; removes it on any failure.
class TempFile {
 public:
  explicit TempFile(const std::string& final_path) : name_(final_path + ".tmp.XXXXXX") {
    fd_ = ::mkstemp(name_.data());
    if (fd_ < 0)
      throw Error(final_path + ": cannot create a temporary file next to it: " + errno_text());
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!renamed_) ::unlink(name_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  int fd() const { return fd_; }
  const std::string& name() const { return name_; }
  // Closes the descriptor; close can report deferred write errors (NFS), so it is checked.
  bool close() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc == 0;
  }
  void mark_renamed() { renamed_ = true; }

 private:
  std::string name_;
  int fd_ = -1;
  bool renamed_ = false;
};

void write_all(int fd, const ByteSpan& part, const std::string& path) {
  const char* p = static_cast<const char*>(part.data);
  size_t left = part.size;
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(path + ": write failed: " + errno_text());
    p += n;
    left -= static_cast<size_t>(n);
  }
}

// Renames without replacing an existing file, atomically where the filesystem supports it.
void rename_no_replace(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return;
  if (errno == EEXIST) throw Error(exists_message(to));
  if (errno != EINVAL && errno != ENOSYS)
    throw Error(to + ": cannot rename the temporary file into place: " + errno_text());
  // The filesystem lacks RENAME_NOREPLACE: the existence check done before writing must do.
  if (std::rename(from.c_str(), to.c_str()) != 0)
    throw Error(to + ": cannot rename the temporary file into place: " + errno_text());
}

// Makes the rename itself durable; some filesystems cannot fsync a directory, which is harmless.
void sync_parent_dir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void write_file_atomic(const std::string& path, const std::vector<ByteSpan>& parts,
                       bool overwrite) {
  struct stat st;
  // Checked up front too, so a refused save fails before writing gigabytes.
  if (!overwrite && ::lstat(path.c_str(), &st) == 0) throw Error(exists_message(path));

  TempFile tmp(path);
  // mkstemp creates 0600; saved models and arrays are ordinary shareable files.
  ::fchmod(tmp.fd(), 0644);
  for (const ByteSpan& part : parts) write_all(tmp.fd(), part, path);
  if (::fsync(tmp.fd()) != 0) throw Error(path + ": fsync failed: " + errno_text());
  if (!tmp.close()) throw Error(path + ": close failed: " + errno_text());

  if (overwrite) {
    if (std::rename(tmp.name().c_str(), path.c_str()) != 0)
      throw Error(path + ": cannot rename the temporary file into place: " + errno_text());
  } else {
    rename_no_replace(tmp.name(), path);
  }
  tmp.mark_renamed();
  sync_parent_dir(path);
}

}  // namespace shiftadd
