// What every image source (directory, tarball, OCI layout, docker registry) resolves
// to before the store touches disk: an ordered list of layers, base first, and the
// parts of the image config that reach the container.

/** An OCI content descriptor (the fields Trellis reads). */
export interface Descriptor {
  mediaType: string;
  /** `sha256:<64 hex>` */
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  platform?: Platform;
}

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
}

/** The image config fields that reach the container (OCI image-spec `config`). */
export interface ImageConfig {
  env: string[];
  /** `USER` of the image: a name, `uid`, or `uid:gid`; '' when unset. */
  user: string;
  /** `WORKDIR` of the image; '' when unset. */
  workingDir: string;
  /** `rootfs.diff_ids`, base first. */
  diffIDs: string[];
}

export interface Layer {
  /**
   * What names the layer's volume before chain ids are computed: the diff id
   * (`sha256:<hex>` of the uncompressed tar) when the source knows it.
   */
  diffID?: string;
  /** Digest the stored blob must hash to (`sha256:<hex>`); absent for a local tarball. */
  digest?: string;
  mediaType: string;
  size?: number;
  /** Where the layer's files go inside the image (grootfs's base-directory annotation); '' for the root. */
  baseDirectory: string;
  /**
   * A local file holding the blob. Registry blobs are downloaded (and their digest
   * verified) by this call; local ones are returned in place and verified while unpacking.
   */
  fetch(tmpDir: string): Promise<LocalBlob>;
}

export interface LocalBlob {
  path: string;
  /** Removes a downloaded copy; a no-op for blobs that live in the source. */
  release(): Promise<void>;
}

export interface ResolvedImage {
  /** For logs and errors: the URL with any credentials removed. */
  name: string;
  /**
   * Layers, base first. For a local tarball with no digest the single layer is named
   * by `chainIDOverride` (cli.md §6.6: sha256 of "<path>-<mtime ns>").
   */
  layers: Layer[];
  chainIDOverride?: string;
  config: ImageConfig;
}

export const MEDIA_TYPES = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNonDistributable: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  ociLayerNonDistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
} as const;

/** grootfs's annotation that unpacks a layer under a sub-directory (cli.md §6.6). */
export const BASE_DIRECTORY_ANNOTATION = 'org.cloudfoundry.experimental.image.base-directory';
