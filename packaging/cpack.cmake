# CPack: `cpack --config build/CPackConfig.cmake` builds shmkv_<version>_amd64.deb from a built
# tree: the binaries, libshmkv-client, headers, the Python package (what `cmake --install`
# installs, under /usr) and the component `service` (packaging/CMakeLists.txt).
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME shmkv)
set(CPACK_PACKAGE_VENDOR shmkv)
set(CPACK_PACKAGE_CONTACT "shmkv maintainers <shmkv@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "node-local KV-cache server for LLM inference engines (shared-memory L1, disk L2)")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # shmkv_<version>_<arch>.deb
set(CPACK_STRIP_FILES ON)  # the build may carry debug info (RelWithDebInfo); the package does not
set(CPACK_DEBIAN_PACKAGE_SECTION misc)
# Library dependencies from the binaries (dpkg-shlibdeps); the Python package needs numpy.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "python3, python3-numpy")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${PROJECT_SOURCE_DIR}/packaging/debian/postinst;${PROJECT_SOURCE_DIR}/packaging/debian/prerm;${PROJECT_SOURCE_DIR}/packaging/debian/postrm;${PROJECT_SOURCE_DIR}/packaging/debian/conffiles")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
# One package holding the default component and `service`.
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_GROUPING ALL_COMPONENTS_IN_ONE)
set(CPACK_COMPONENTS_ALL Unspecified service)
include(CPack)
