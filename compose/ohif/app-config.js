/** OHIF Viewer 3.13 configuration for a DICOMweb server at the same origin: the viewer at
 * the root of the origin, Orthanc's DICOMweb plugin at /dicom-web (tests/viewer/harness.py
 * serves both on one loopback port). scripts/install-viewer.sh copies this file over the
 * app-config.js that the @ohif/app dist ships (which points at OHIF's public demo server). */
window.config = {
  name: 'lumbarnode same-origin Orthanc',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  // one origin: no cross-origin isolation warning; a headless browser without a GPU renders
  // on the CPU, and the modal saying so would cover the viewport
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  showErrorDetails: 'always',
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (same origin)',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
