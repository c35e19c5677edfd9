# Sourced by demo.sh and test.sh: as root, installs from Debian's packages
# what unionmount's commands and tests need when it is missing, and makes
# /dev/fuse usable by every user as Debian's udev rules do.
if [ "$(id -u)" = 0 ]; then
	missing=()
	command -v fusermount3 >/dev/null || missing+=(fuse3)
	command -v getfattr >/dev/null || missing+=(attr)
	command -v setfacl >/dev/null || missing+=(acl)
	if [ ${#missing[@]} -gt 0 ]; then
		echo "installing ${missing[*]} (apt-get)"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
	[ -c /dev/fuse ] || mknod -m 0666 /dev/fuse c 10 229
	chmod 0666 /dev/fuse
fi
